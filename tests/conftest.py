
pytest_plugins = ["tests.kms_fixtures"]
