"""The ops' float64 references (netspec/ops/reference/) in the kernels' layouts, and the losses'
references: written for clarity, sharing no code with the kernels."""
