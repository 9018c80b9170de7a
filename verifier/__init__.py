"""The offline audit-bundle verifier; ``gl_audit_verify.py`` also runs on its own, with only the standard library."""
