"""
Anti-spam filters (docs/filters.md). Each filter is a small object whose
C{check(session, transaction)} returns a Deferred L{actions.FilterResult};
L{pipeline.Filters} runs them before the message is read and turns their
results into one L{actions.Judgement}: the action, the headers and the
reasons for the log.
"""
