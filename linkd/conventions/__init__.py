"""Conventions, which turn links into environment variables and hosts lines.

`schema` parses a convention's text (the file format is documented there); `render` is the
pure function (convention, consumer, linked peers) -> variables and hosts lines. The
conventions are data: the built-in ones live in the top-level `conventions/` directory
(shipped as `linkd/builtin_conventions/`), and the shell reads the files.

Pure: it may import `linkd.core.model`, `linkd.spec.bounded_yaml`, `linkd.errors`, PyYAML
and the standard library; it reads no files.
"""
