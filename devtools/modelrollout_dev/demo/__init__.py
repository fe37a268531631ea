"""`make demo`: two rollouts on the local environment with simulated traffic: one promotes, one develops a 5%
error rate at its second stage and is rolled back."""
