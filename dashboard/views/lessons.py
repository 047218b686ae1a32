"""Lessons: short guided steps, each a link that sets another page's controls through its URL."""

import streamlit as st

from dashboard import session

st.title("Lessons")
st.markdown(
    "Six short steps for a class, each a few minutes. A step's link opens a page with its controls already set "
    "(the settings travel in the URL, so the link can be pasted into slides or a chat); the text says what to "
    "look for and why. Change the controls freely afterwards: the step's link sets them again.")

PROMPT = session.DEFAULT_PROMPT
LESSONS = [
    {"title": "1. Turn the noise off",
     "page": "views/generate.py", "label": "Generate at s = 0",
     "params": {"prompt": PROMPT, "scale": "0.0", "paths": "8", "seed": "0"},
     "look": "All eight continuations are the same text as the drift-only line. The fan chart's band has collapsed "
             "onto the dashed drift-only path, and the red diffusion curve is flat at zero.",
     "why": "At s = 0 the equation dx = mu dt + s sigma dW has no noise left: it is an ordinary differential "
            "equation, and one prompt has one path. Everything that makes the paths differ comes from the noise."},
    {"title": "2. Watch the paths unfold",
     "page": "views/generate.py", "label": "Generate with the replay on",
     "params": {"prompt": PROMPT, "scale": "1.0", "paths": "8", "seed": "0", "replay": "true", "highlight": "1"},
     "look": "Press ▶ Play under the map: the paths leave the star (the prompt's last token) together and "
             "spread, one token per frame, while path 1's text grows above them. The fan chart replays in step.",
     "why": "Each frame is one SDE step: the drift pulls every path the same way, the noise pushes each its own "
            "way. The slider stops the film at any token."},
    {"title": "3. Same noise, different s",
     "page": "views/compare.py", "label": "Compare four scales on one seed",
     "params": {"prompt": PROMPT, "scales": ["0.02", "0.1", "0.5", "2"], "paths": "16", "seed": "0"},
     "look": "Read down a column of the aligned texts: the same moment under stronger and stronger noise. The "
             "outlined token, where a path first leaves the drift's text, moves left as s grows; the curves of "
             "the chart climb earlier.",
     "why": "The seed fixes the Brownian path and s only scales it, so the runs share every random number. "
            "This is a counterfactual: what the same luck does when it is pushed harder."},
    {"title": "4. Raise s until the text goes off the rails",
     "page": "views/generate.py", "label": "Generate at s = 4",
     "params": {"prompt": PROMPT, "scale": "4.0", "paths": "16", "seed": "0"},
     "look": "The texts stop reading as language: rare words and word pieces in no order. The red diffusion "
             "curve stands well above the blue drift curve. The shading does not fade, though: far from every "
             "token, the nearest one wins clearly, so a confident decode is not a sensible one. Then open the "
             "Stability page's sweep to see where the model's critical scale lies.",
     "why": "When s sigma dW outweighs mu dt, each step lands wherever the noise sends it, far from any token the "
            "drift would choose: the drift's pull back towards language is lost."},
    {"title": "5. Where the model is unsure",
     "page": "views/learned.py", "label": "Read a text's uncertainty",
     "params": {"text": "The cat sat on the mat because it was warm and quiet."},
     "look": "The tall bars are positions where sigma is large: is that where you, too, would hesitate over the "
             "next word? Hover a bar for the tokens the drift expects next, and compare the two rankings of "
             "tokens above it.",
     "why": "sigma is the model's own uncertainty about the next step. If it has learned language, it should be "
            "small where the continuation is forced and large where many words fit."},
    {"title": "6. Where the drift alone leads",
     "page": "views/learned.py", "label": "Find the drift's loop",
     "params": {"attractor_prompt": PROMPT},
     "look": "With no noise the text ends up repeating one phrase for ever, a loop of tokens (the attractor). The "
             "scan shows how little noise knocks the paths off that loop, and how much more it takes before the "
             "text stops looping altogether.",
     "why": "Without noise the next token depends on the text so far alone. Once the last few tokens repeat, the "
            "memory of them settles too, and the same tokens keep leading back to each other. The loop is the "
            "drift's blind spot; the diffusion is what lets generated text out of it."},
]

for lesson in LESSONS:
    with st.container(border=True, key=f"lesson_{LESSONS.index(lesson) + 1}"):
        st.markdown(f"#### {lesson['title']}")
        st.page_link(lesson["page"], label=lesson["label"], icon=":material/arrow_forward:",
                     query_params=lesson["params"])
        st.markdown(f"**Look for:** {lesson['look']}  \n**Why:** {lesson['why']}")
