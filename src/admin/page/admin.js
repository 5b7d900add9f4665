// the admin page's script
