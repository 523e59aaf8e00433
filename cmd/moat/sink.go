package main

import "fmt"

func cmdSink(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}
