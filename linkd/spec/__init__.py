"""The stack file: YAML text in, a validated `linkd.core.model.Stack` out.

`stack_file` is the entry (`parse_stack`); `project` first makes one document of the
stack's files (`-f` files, `include:`, `extends:`: `documents`, `extends`, with
Compose's merge rules in `merge`); the other modules read one part of the document
each (`services`, `environment`, `networks`, `health`, `limits`, `security`, `x_linkd`),
on the bounded YAML composer (`bounded_yaml`) and the node reader (`nodes`, `values`);
`checks` checks the whole, `dump` writes a stack back out as plain data.

Pure: it may import `linkd.core` (the model it builds), `linkd.errors`, PyYAML and the
standard library; no I/O beyond the text it is given (no files, sockets, processes,
clock). Reading the file is the caller's job: `linkd.loader`, on `linkd.files`.
"""
