"""The seed experiments as commands: `npylstm sine`, `npylstm alphabet`, `npylstm gates`.

Each command module has add_arguments(parser) and run(args) -> int (registered in npylstm/cli.py);
common.py holds what they share. From Python, the gate recorder and its plot:

    npylstm.gate_activations(lstm, x) -> {"I", "F", "O", "C_tilde", "C", "H"}: (T, H) arrays
    npylstm.plot_gates(acts, "gates.png")
"""

from .gates import gate_activations, plot_gates
