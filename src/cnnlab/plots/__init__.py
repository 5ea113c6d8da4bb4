"""Every figure cnnlab draws, as matplotlib `Figure` objects saved through their own canvas: nothing here
touches pyplot or matplotlib's global state (backend, rc settings), so a notebook's plots stay its own."""
