"""The architecture zoo's references: each network written directly in PyTorch, as torchvision
(ultralytics for YOLOv8) builds it, under its parameter names, sharing no code with netspec;
and, per network, the renaming that takes netspec's parameter names to the reference's."""
