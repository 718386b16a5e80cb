"""The Gradio app's parts: event functions (events.py) and figures drawn for the page (figures.py)."""
