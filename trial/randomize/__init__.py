"""Concealed randomization: permuted blocks per stratum or minimization, from a sealed seed."""
