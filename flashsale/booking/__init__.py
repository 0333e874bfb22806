"""Booking (pre-registration) and admission of booked shoppers to the sale."""
