package main

import "os"

func main() { os.Exit(cmdQueue(os.Args[1:])) }
