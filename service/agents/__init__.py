"""The agents ERS ships: a router and the nutrition, workout and budget agents."""
