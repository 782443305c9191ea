"""Graph passes: small functions Graph -> Graph, each with a name, a purpose and a record
of what it changed; `manager.optimize` runs a selection of them on a copy of the graph.

A pass function `(graph, training) -> list[str]` rewrites the graph it is given (a copy)
through the Graph's methods, which keep Node.inputs and the edges as one, and returns
one line per change (`optimize` makes them a PassRecord). Its docstring says what it
requires of the graph and what holds of the graph it leaves. What a pass needs to know of
an op it reads from the op's declared traits (ops/base.py Traits); what it learns about
a node it writes into the node's typed fields (Node.folded, Node.param_names) or, for a
fused group, into the fused op's typed attributes (ops/fused.py FusedGroup).

Two graphs come out of one spec: the inference graph (every pass) and the training graph
(training-safe passes only: removing dropout would change what training computes). The
checked graph itself is never modified; summaries and diagrams describe the spec as
written. Every pass keeps parameter names (node name + parameter name) as they were, so
weight files fit the optimised program unchanged (a node a pass splits into parts names
its parts' tensors in Node.param_names), and never removes an input or an output.
Shapes are verified after every pass.

The modules: base.py (a pass, its record, the registry), one module per family of passes
(simplify.py, separable.py, fold.py, fuse.py), manager.py (selection and running them).

    graph, records = optimize(graph, training=False)             # the default passes
    graph, records = optimize(graph, False, select("-cse"))      # all but one
"""

# The passes a compile runs, in this order (`--passes` selects from it): clean-ups first, the
# separable split before batch-norm folding (a batch norm after it then folds into its 1x1
# conv), fusion last (it groups what the others left). Kept free of imports: the command
# line's help quotes it.
DEFAULT = ("identity", "dropout", "separable", "fold-shapes", "fold-batchnorm", "cse", "dead-nodes",
           "fuse")
