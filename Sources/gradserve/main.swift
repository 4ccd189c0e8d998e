import GradCore
print(BLASRuntime.config)
