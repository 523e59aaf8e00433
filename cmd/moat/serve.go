package main

import "fmt"

func cmdServe(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}

func cmdConfig(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}

func cmdVerifyPass(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}

func cmdPassSecret(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}
