"""The DNS edge: answers access domains from AnswerSets compiled into ready wire responses."""
