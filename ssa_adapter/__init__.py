"""SSA adaptive classifier (semantic + spatial prototype adaptation); built by a later issue."""
