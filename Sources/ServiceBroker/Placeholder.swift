// ServiceBroker
