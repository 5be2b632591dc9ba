module graygate.example/canary

go 1.19
