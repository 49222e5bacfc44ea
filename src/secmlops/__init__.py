"""SecMLOps: secure ML pipeline controls with signed, verified evidence."""
