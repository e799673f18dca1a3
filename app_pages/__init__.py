"""The Streamlit app's data access and page modules (the frame is ``app.py``)."""
