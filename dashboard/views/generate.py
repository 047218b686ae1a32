"""Generate: sample paths from a prompt, their text, and drift against diffusion."""

import html
import textwrap

import numpy as np
import streamlit as st

from dashboard import charts, compute, figures, session, shaping, token_html
from sdecore.limits import MAX_PROMPT_TOKENS

st.title("Generate")
st.markdown(
    "Each new token is one step of **dx = mu dt + s sigma dW** in embedding space: the drift **mu** "
    "carries the predictable part of language, the diffusion **sigma** its variability, and **s** is "
    "your diffusion knob. The same seed keeps the same Brownian path, so moving **s** bends the same "
    "paths rather than drawing new ones. The URL keeps these settings: copy it to share this view.")

ck, folder, stamp = session.require_checkpoint()
lo_p, hi_p = session.PAGE_LIMITS["paths"]
lo_t, hi_t = session.PAGE_LIMITS["tokens"]
lo_s, hi_s = session.PAGE_LIMITS["diffusion_scale"]
lo_k, hi_k = session.PAGE_LIMITS["substeps"]
bind = session.URL_BOUND

prompt = st.text_area("Prompt", value=session.DEFAULT_PROMPT, key="prompt", height=68, **bind)
SCALE_STEP = 0.05
scale = st.slider("Diffusion magnitude s (0 = drift only)", lo_s, hi_s, 1.0, step=SCALE_STEP, key="scale", **bind,
                  help="Multiplies sigma: dx = mu dt + s sigma dW. Same seed, same Brownian path at every s.")
scale = round(float(scale), 10)  # on the slider's grid, as typed on the command line (a sum of steps can be off)
c = st.columns([1, 1, 1.3, 1, 1.2, 1])
paths = c[0].number_input(f"Paths ({lo_p}-{hi_p})", lo_p, hi_p, 8, key="paths", **bind)
tokens = c[1].number_input(f"Tokens ({lo_t}-{hi_t})", lo_t, hi_t, 24, key="tokens", **bind)
solver = c[2].selectbox("Solver", session.SOLVERS, index=0, key="solver", **bind,
                        help="em: the engine's Euler-Maruyama loop; euler, milstein, srk through torchsde "
                             "(srk costs about ten times euler).")
substeps = c[3].number_input(f"Substeps ({lo_k}-{hi_k})", lo_k, hi_k, 1, key="substeps", **bind,
                             help="Solver steps per token.")
seed = c[4].number_input("Seed", 0, 2**31 - 1, 0, key="seed", **bind)
snap = c[5].toggle("Snap", value=True, key="snap", **bind,
                   help="Snap to tokens: after each token, set x to the decoded token's embedding "
                        "(off: the continuous path).")

if not prompt.strip():
    st.error("The prompt is empty: type some text to continue, e.g. “How can I improve my sleep?”.")
    st.stop()
if len(ck.embedder.encode(prompt)) > MAX_PROMPT_TOKENS:
    st.info(f"The prompt is longer than {MAX_PROMPT_TOKENS} tokens: only its last "
            f"{MAX_PROMPT_TOKENS} are read.")

args = (folder, stamp, prompt, int(paths), int(tokens))
rest = (solver, int(substeps), int(seed), bool(snap))
try:
    with st.spinner("Simulating paths ..."):
        res = compute.generate(*args, float(scale), *rest)
        # At s = 0 the noise is multiplied by zero, so every seed gives this same path: seed 0 keys
        # it, and the whole class shares one drift-only run per prompt.
        base = compute.generate(folder, stamp, prompt, 1, int(tokens), 0.0, solver, int(substeps), 0, bool(snap))
except ValueError as exc:
    st.error(f"Cannot generate: {exc}")
    st.stop()

drift_mag, diff_mag = shaping.step_magnitudes(res)
n_div = int(res["diverged"].sum())
m = st.columns(4)
m[0].metric("Paths diverged", f"{n_div} / {len(res['diverged'])}")
m[1].metric("Mean decode probability", f"{np.nanmean(res['probs'][res['token_ids'] >= 0]):.3f}"
            if (res["token_ids"] >= 0).any() else "n/a")
m[2].metric("Median |mu dt| per step", f"{np.nanmedian(drift_mag):.3g}")
m[3].metric("Median s*sqrt(sum sigma^2 dt)", f"{np.nanmedian(diff_mag):.3g}")

st.subheader("Continuations")
st.markdown(token_html.legend_html("shading: how sure the decoding was (emission probability of each token)",
                                   (31, 111, 139), 1.0), unsafe_allow_html=True)
with st.container(key="continuations"):
    # one element for all the lines: each element is a message to the browser and a render there
    base_spans = token_html.token_spans(base["token_strs"][0], base["probs"][0], 1.0, (31, 111, 139), "p")
    lines = [f"**Drift only (s = 0):** {base_spans}"]
    for i, item in enumerate(res["texts"]):
        toks = res["token_strs"][i]
        flag = (f" &nbsp;⚠️ *diverged at step {int(res['diverged_at'][i]) + 1}*" if item["diverged"] else "")
        ok = res["token_ids"][i] >= 0
        sure = f"mean p {res['probs'][i][ok].mean():.2f}" if ok.any() else "no tokens"
        spans = token_html.token_spans(toks, res["probs"][i][: len(toks)], 1.0, (31, 111, 139), "p")
        lines.append(f"**{i + 1}.** {spans} <span style='color:#777;font-size:0.85em'>({sure})</span>{flag}")
    st.markdown("\n\n".join(lines), unsafe_allow_html=True)


def hover(i: int, r: dict, nearest: list[list[str]]) -> list[str]:
    toks = ["(prompt)"] + r["token_strs"][i]
    return [f"step {k}: nearest token '{nearest[i][k]}'"
            + (f", decoded '{toks[k]}' (p={r['probs'][i][k - 1]:.2f})" if 1 <= k < len(toks) else "")
            for k in range(len(nearest[i]))]


def path_metrics(i: int, item: dict) -> dict:
    ok = res["token_ids"][i] >= 0
    return {"path": i + 1, "text": item["text"], "diverged": item["diverged"],
            "diverged_at_step": int(res["diverged_at"][i]) + 1 if item["diverged"] else None,
            "mean_decode_prob": float(res["probs"][i][ok].mean()) if ok.any() else None,
            "mean_drift_step": float(np.nanmean(drift_mag[i])), "mean_diffusion_step": float(np.nanmean(diff_mag[i])),
            "prompt": prompt, "scale": scale, "solver": solver, "substeps": substeps, "seed": seed, "snap": snap}


REPLAY_PATHS = 16


def replay_captions(r: dict, i: int) -> list[str]:
    """Per step k, path i's text after k tokens: the text the replay shows growing."""
    toks = r["token_strs"][i]
    steps = r["token_ids"].shape[1]
    return [f"<b>path {i + 1}, token {k}:</b> " + _wrap(ck.embedder.decode(r["token_ids"][i][:min(k, len(toks))]))
            for k in range(steps + 1)]


def _wrap(text: str, width: int = 70, lines: int = 3) -> str:
    """Plotly annotations do not wrap: break the text into lines, keeping its end."""
    parts = textwrap.wrap(text, width) or [""]
    return "<br>".join(html.escape(p) for p in parts[-lines:])


@st.fragment
def path_views() -> None:
    """The charts, the map and the downloads: a fragment, so that their own controls (the fan
    chart's quantity, PCA or the stored map) rerun this part alone; the paths are cached."""
    st.subheader("Paths over time")
    m_stored = compute.maps(folder, stamp)
    q1, q2 = st.columns(2)
    quantity = q1.radio("Fan chart quantity", ["distance from the vocabulary mean", "map axis 1"],
                        horizontal=True, key="fan_quantity")
    use_pca = q2.toggle("Use PCA instead of the stored map", key="use_pca", disabled=m_stored["stored"] is None,
                        help=m_stored["note"] or "Switch between the checkpoint's reference map and PCA of its tokens.")
    proj = shaping.projection(m_stored, use_pca)
    dim = res["states"].shape[-1]
    flat = shaping.project(proj, res["states"].reshape(-1, res["states"].shape[-1]))
    xy = list(flat.reshape(res["states"].shape[0], -1, 2))
    base_xy = shaping.project(proj, base["states"][0])
    if quantity.startswith("distance"):
        values, base_values = np.linalg.norm(res["states"], axis=-1), np.linalg.norm(base["states"][0], axis=-1)
        qname, unit = "|x - vocabulary mean|", charts.UNIT
    else:
        values, base_values = np.stack([p[:, 0] for p in xy]), base_xy[:, 0]
        qname, unit = f"{proj['label']} axis 1", "map units"
    r1, r2 = st.columns(2)
    replay = r1.toggle("Replay token by token", key="replay", **bind,
                       help="Adds a play button and a slider to the fan chart and the map: the paths unfold one token "
                            "at a time, the decoded text growing above them.")
    options = ["none"] + [str(i + 1) for i in range(len(res["texts"]))]
    pick = r2.selectbox("Highlight a path", options, key="highlight", **bind,
                        help="Draws one path bold and the others faint, on both charts and in the replay's text.")
    highlight = int(pick) - 1 if pick != "none" and int(pick) <= len(res["texts"]) else None
    shown = list(range(len(xy)))
    if replay and len(shown) > REPLAY_PATHS:  # frames repeat each path's points once per step: keep them few
        keep = REPLAY_PATHS if highlight is None or highlight < REPLAY_PATHS else REPLAY_PATHS - 1
        shown = list(range(keep)) + ([highlight] if keep < REPLAY_PATHS else [])
        st.caption(f"The replay draws {REPLAY_PATHS} of the {len(xy)} paths"
                   + (" (the highlighted one among them)" if highlight is not None else "")
                   + "; the fan's bands still span them all.")
    captions = replay_captions(res, highlight if highlight is not None else 0) if replay else None
    left, right = st.columns(2)
    with left:
        figures.show(charts.fan_chart(res["t"], values, base_values, qname, unit,
                                      f"Fan of {len(values)} paths at s = {scale:g}", highlight, captions, shown),
                     key="fan", name="fan_chart")
        st.caption("Look for the band widening with s while the dashed drift-only path stays put: diffusion spreads "
                   "the paths around the drift.")
    with right:
        figures.show(charts.magnitude_chart(res["t"][:-1], drift_mag, diff_mag), key="magnitudes",
                     name="drift_vs_diffusion")
        st.caption("Where the red curve passes the blue one, noise outweighs the drift's pull and the text starts to "
                   "wander; at s = 0 the red curve is zero.")

    st.subheader("Paths on the map")
    if m_stored["note"]:
        st.caption(f"Note: {m_stored['note']}.")
    if proj.get("quality"):
        scores = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in proj["quality"].items())
        st.caption(f"How well the map keeps neighbourhoods (stored with it): {scores}.")

    near = compute.nearest_tokens(*args, float(scale), *rest)
    base_near = compute.nearest_tokens(folder, stamp, prompt, 1, int(tokens), 0.0, solver, int(substeps), 0,
                                       bool(snap))
    hovers = [hover(i, res, near) for i in shown]
    figures.show(charts.map_chart(proj["ref_xy"], proj["ref_tokens"], [xy[i] for i in shown], hovers, base_xy,
                                  hover(0, base, base_near), proj["label"], highlight, captions, shown), key="map",
                 name="paths_map")
    st.caption("Grey cells hold the most frequent tokens (darker: more of them; hover to name them); hover a path's "
               "point to see the token nearest to it. With snapping on, "
               "each step starts from the decoded token's embedding."
               + (" Press play to watch the paths unfold; drag the slider to stop at a token." if replay else ""))

    d1, d2, _ = st.columns([1, 1, 3])
    # the files are built when their button is pressed, not on every rerun
    d1.download_button("Paths (CSV)",
                       lambda: shaping.csv_text(charts.paths_frame_rows(res, xy, "map", drift_mag, diff_mag)),
                       "paths.csv", "text/csv", on_click="ignore")
    d2.download_button("Metrics (CSV)",
                       lambda: shaping.csv_text([path_metrics(i, item) for i, item in enumerate(res["texts"])]),
                       "path_metrics.csv", "text/csv", on_click="ignore")
    st.caption(f"State dimension {dim}; times in tokens (dt = {res['dt']:g} per token); distances in standardised "
               "embedding units (each dimension divided by its spread over the vocabulary).")


path_views()

# The slider's next steps are simulated while this page is read, when the model's worker has
# nothing else to do (docs/design.md §7): moving the slider by a step then finds its run ready.
# Values this session has already shown are left out (most likely still in the page's cache).
settings = (folder, stamp, prompt, int(paths), int(tokens), solver, int(substeps), int(seed), bool(snap))
seen = st.session_state.get("_generate_seen")
if seen is None or seen[0] != settings:
    seen = st.session_state["_generate_seen"] = (settings, set())
seen[1].add(scale)
try:
    reach = compute.prefetch_reach()
except ValueError as exc:
    st.warning(f"The next slider steps are not prepared ahead: {exc}.")
else:
    compute.prefetch(*args, compute.neighbour_scales(scale, SCALE_STEP, reach, seen[1]), *rest,
                     owner=session.owner(st.session_state))
