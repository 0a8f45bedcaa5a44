def app(environ, start_response)  # the colon is missing on purpose
    return []
