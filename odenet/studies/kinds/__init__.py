"""The study kinds: one module each, discovered and registered by ``odenet.studies``.

A new kind is a new module here (or any module that defines a ``Study`` subclass and is
imported): its class registers itself by its ``kind`` name, and the schema, the store
layout, the spec reader and the ``odenet study`` command follow from it.
"""
