# Gives the tests the `airo_plugin` fixture (and nothing else).
pytest_plugins = ["airo.core.testing"]
