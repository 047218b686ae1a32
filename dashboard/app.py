"""Entry point: `streamlit run dashboard/app.py`.

Makes the process-wide settings (docs/design.md §6.3), registers the pages with
st.navigation and draws the sidebar every page shares: which model is active, where it
runs, and the data credit.
"""

import sys
from pathlib import Path

# The dashboard runs from a checkout without installing sdecore: put the repo root first.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sdecore.process_setup import configure_threads  # noqa: E402

# Before anything imports torch: spinning OpenMP threads slow torch tens of times on a busy CPU.
configure_threads()

import streamlit as st  # noqa: E402

st.set_page_config(page_title="Text SDE laboratory", page_icon=":material/timeline:", layout="wide")

# Before the heavy imports below (torch, the model): the browser loads Plotly's code meanwhile.
from dashboard.preload import preload_plotly  # noqa: E402

preload_plotly()

from threadpoolctl import threadpool_limits  # noqa: E402  (the dashboard extra brings it)

from dashboard import compute, figures, session  # noqa: E402

# One BLAS thread: the dashboard's matrices are small (a 1500 x 384 PCA), and OpenBLAS's
# worker threads spin; on a busy 2-core CPU one SVD took 8 s threaded against 0.09 s on one
# thread. `streamlit run` imports numpy before this file, so an environment variable would
# come too late. The limit applies to the BLAS libraries loaded so far (numpy's and
# scipy's, through the imports above); it is cheap (2 ms), so every run of this script sets it.
threadpool_limits(limits=1, user_api="blas")

# Page scripts live in views/, not pages/: Streamlit treats a pages/ folder next to the main
# script as an old-style multipage app, and a URL that names a page (a shared link such as
# /stability?scale=2) would then run that file alone, without this script's sidebar.
PAGES = [
    st.Page("views/generate.py", title="Generate", icon=":material/timeline:", default=True),
    st.Page("views/stability.py", title="Stability", icon=":material/balance:"),
    st.Page("views/losses.py", title="Losses and trajectories", icon=":material/show_chart:"),
    st.Page("views/evaluation.py", title="Evaluation", icon=":material/fact_check:"),
    st.Page("views/compare.py", title="Same noise", icon=":material/compare_arrows:"),
    st.Page("views/learned.py", title="What the nets learned", icon=":material/psychology:"),
    st.Page("views/primer.py", title="Primer", icon=":material/school:"),
    st.Page("views/lessons.py", title="Lessons", icon=":material/menu_book:"),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
]


def sidebar() -> None:
    ck, err = session.checkpoint()
    folder = session.active_model_folder()
    with st.sidebar:
        st.markdown("### Model")
        if st.session_state.get("active_model"):
            st.success(f"Active: the model trained on the Train page ({st.session_state.get('active_name', '')})")
            if st.button("Back to the default model", key="reset_model"):
                from dashboard import runs  # here: it brings pandas and the evaluation code

                runs.activate(st.session_state, None)
                st.rerun()
        if ck is None:
            st.error(err)
            st.caption(f"Data credit: {session.DATA_CREDIT}")
            return
        hist = ck.history or {}
        best = (hist.get("best_validation") or {}).get("token_ppl")
        m = compute.maps(str(folder), session.folder_stamp(folder))
        lines = [
            f"**Folder:** `{folder.name}`",
            f"**Device:** `{ck.model.emission.table.device}`",
            f"**Embedder:** {ck.embedder.name}",
            f"**Map:** {m['stored']['label'] if m['stored'] else 'none stored (PCA on the fly)'}",
        ]
        if hist.get("epochs"):
            n_ep = len(hist["epochs"])
            plural = "s" if n_ep != 1 else ""
            lines.append(f"**Trained:** {n_ep} epoch{plural}, best {hist.get('best_epoch', '?')}"
                         + (f", validation perplexity {best:,.0f}" if best else ""))
        st.markdown("  \n".join(lines), help=str(folder))
        st.caption(f"Data credit: {ck.credit}")


def chart_settings() -> None:
    with st.sidebar:
        st.radio("Chart images", list(figures.IMAGE_FORMATS), key="image_format", horizontal=True,
                 help="What the camera in each chart's toolbar saves: a PNG at three times its size on screen, for "
                      "slides and print, or an SVG to edit. Each chart's data downloads as CSV below it.")


nav = st.navigation(PAGES)
sidebar()
chart_settings()
nav.run()
