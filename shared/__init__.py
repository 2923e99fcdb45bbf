"""Code shared by every GTM service: messages, resources, subjects, settings."""
