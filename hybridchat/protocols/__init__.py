"""Wire schemas of the model APIs hybridchat speaks, shared by its clients and its stand-in server."""
