print("fuservicemount: not yet implemented")
