"""Jinja2 templates of the generated `*_jobs.py` modules (package data).

Loaded with `jinja2.PackageLoader("lucidity.templates", "")` by
`lucidity.codegen.render`; the templates read only the IR of
`lucidity.codegen.model` and make no decisions of their own.
"""
