"""Built-in airo plugins, registered through the `airo` entry-point group like any third-party plugin."""
