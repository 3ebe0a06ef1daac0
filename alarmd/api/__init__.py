"""HTTP+JSON control API: the only way consoles and admin tools read or change state."""
