package main

const sysSetns = 308 // setns(2); the syscall package does not name it on amd64
