package main

const sysSetns = 346 // setns(2); the syscall package does not name it on 386
