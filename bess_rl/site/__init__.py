"""The physical problem, numpy only: site sizes, scenarios (loading, validation), the gymnasium env, data."""
