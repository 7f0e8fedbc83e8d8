"""Stand-ins for public dynamic-conv implementations that CI cannot import.

Each module reproduces one public implementation's class names, constructor signatures,
parameter names and shapes and forward math (written anew, not copied), so a real
checkpoint's ``state_dict`` loads into the stand-in and the converter sees the same
structure as with the real package.
"""
