"""Config code that ships with the package: ``base.get_config(method)`` is the shared recipe of every dataset config.

The user-facing config files live in the repository's ``configs/`` folder and import this package, so an installed
(non-editable) package still finds its defaults.
"""
