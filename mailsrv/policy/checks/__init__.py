"""
The checks, one small object each, grouped by hook. A check module imports
the framework (verdict), never another check: what two checks share (a
client's standing, the listener's safe list) is given to each.
"""
