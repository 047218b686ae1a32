"""Streamlit laboratory for the text SDE: `streamlit run dashboard/app.py`."""
