"""The dashboard views that ship with twossp (YAML files; read through importlib.resources)."""
