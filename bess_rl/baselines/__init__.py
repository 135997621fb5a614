"""What agents are judged against, without torch: the episode runner, rule-based control, the LP optimum."""
