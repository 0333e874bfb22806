"""The opening window: a fair start for an arrival sale.

A sale with ``opening_window_ms`` W hands out tickets instead of units to the public buy
requests that arrive from W before its start until W after it; nothing is reserved. When the
window closes, the tickets are put in a random order drawn from a seed committed to at the
sale's creation (shuffle.py), and admitted in that order by the booking queue's admission
machinery (engine/lua/admit.lua). Requests after the window get the next ticket numbers and
join the end of the queue in arrival order. Whoever fires first or most gains nothing within
the window.

    shuffle.py  the order: method, seed commitment, ranks, the digest of the ordered list
    fields.py   the options as fields of the sale's Redis hash, and back
    tickets.py  a ticket as the buy script answers it
    roll.py     the tickets held in Redis, and the published summary of the draw
    export.py   the ticket list as CSV or JSON lines, written and read back
    verify.py   re-deriving the order from an exported list and checking it
"""
