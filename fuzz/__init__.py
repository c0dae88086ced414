"""Fuzzing harnesses (atheris): the file loader and the text/ids-to-kernel paths. See docs/security.md."""
