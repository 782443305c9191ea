"""The language: .net text -> AST (parser, grammar.lark) -> Spec with its imports (loader)
-> the checked Graph of one network (elaborate). printer turns an AST back into text."""
