"""Plain float64 NumPy references for the kernels: written for clarity, sharing no code with them."""
