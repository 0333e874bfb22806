"""Payments: the payment service tells flashsale a shopper paid, and flashsale decides, once,
what that payment does to the order.

notifications.py  verify a Standard Webhooks notification and read its body strictly
decide.py         the decision: one atomic script in Redis (engine/lua/pay.lua)
store.py          payments in PostgreSQL (the writer's hook, the rare path without a sale)
simulator.py      a payment service's side of the hand-off, for the demo and rehearsals
"""
