"""
The one policy framework (docs/policy.md): checks registered at the
connect, sender, recipient, header and body hooks, each returning a
L{verdict.Verdict} (a filter's with a L{verdict.Finding});
L{hooks.run} runs a hook's gates, L{listener.ListenerPolicy} is what a
protocol asks at each hook, L{judgement.Judgement} combines the findings
and L{apply} carries out their configured action. L{listener.build} is the
one place that knows every check. The protocols ask; only they write
replies.
"""
