"""The two-stage heatmap network of Chim, Lee & Park (Sensors 2019) and everything that travels with it.

``model`` imports nothing from ``app`` or ``training``: the service and the training package both build on it.
"""
