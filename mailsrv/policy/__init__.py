"""
The one policy framework (docs/policy.md): checks registered at the
connect, sender, recipient, header and body hooks, each returning a
L{verdict.Verdict}; L{hooks.run} runs a hook's checks; L{listener} builds
a listener's checks from the config. The protocols ask; only they write
replies.
"""
